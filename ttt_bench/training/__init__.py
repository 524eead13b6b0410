"""Training: the backbone that hosts a mixer, the outer loop, and the offline tasks."""
