"""trailsdb package."""
