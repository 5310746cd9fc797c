"""Applications: the command line and the demo."""
