"""Label sheets: templates (geometry as data) and renderers."""
