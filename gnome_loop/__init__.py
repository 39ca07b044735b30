"""gnome_loop: active-learning discovery of stable inorganic crystals, the GNoME way."""

__version__ = "0.1.0"
