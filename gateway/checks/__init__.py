"""The request checks of SPEC §4, one module each, each answering allow or a denial."""
