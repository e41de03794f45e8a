"""The region tree: district → street → zone → grid → micro-grid → building."""
