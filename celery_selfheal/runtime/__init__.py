"""Running a step's runtime: process groups, watchdogs, capped attempt logs."""
