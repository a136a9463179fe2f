"""herdless load testing: the demo origin, the open-loop generator and its reports."""
