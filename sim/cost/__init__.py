"""Cost models behind one interface (``interface``): the roofline (the embedded default), a calibration profile
(``profiled``), a constant (tests); the profile format (``profile_format``) and the interpolation tables
(``tables``) belong here, to their reader, and calibration writes them."""
