"""Running a detector: the resident model, its batching queue, precision, and the slide pipeline."""
