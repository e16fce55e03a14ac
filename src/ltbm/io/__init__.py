"""Reading audio files and hashing files and settings: the lowest layer, no ltbm imports."""
