"""Tests of the runtime supervisor: real subprocesses, process groups and signals."""
