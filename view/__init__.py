"""The operator's live view of a station (`sclvi view`): last parts with heatmaps, counters, alarms, control."""
