"""`oss-serve up`: the whole stack on one machine, started in order and stopped in reverse."""
