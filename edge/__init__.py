"""Edge runtime: acquisition -> inference -> decide -> publish (built in the edge-runtime issue)."""
