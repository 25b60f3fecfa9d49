"""What a run leaves on disk: detections (GeoParquet, GeoJSON), the manifest, atomic writes."""
