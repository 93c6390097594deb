"""Files on disk: images with their geometry, atomic writes, colour pictures, bundled resources.

Layer 0 of the core: imports nothing else of the package. ``images`` reads and writes
medical images (NIfTI, NRRD, MHA/MHD, TIFF, DICOM, pictures) keeping spacing, origin and
direction, as ``volume``'s :class:`Volume` (``tiff``: TIFF files with their geometry);
``atomic`` makes every write atomic; ``colour`` splits colour pictures into channels;
``pil_pictures`` reads GIF and palette PNGs; ``file_checks`` recognises broken files;
``resources`` names the bundled files (demo model, samples).
"""
