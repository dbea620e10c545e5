"""Worker entry modules and demo runtimes (not part of the installed package)."""
