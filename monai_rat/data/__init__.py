"""Demo data sets built from images that installed packages ship, and real-data list builders."""
