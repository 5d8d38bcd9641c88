"""`oss-serve autoscale`: replica counts per GPU pool from queue and load signals."""
