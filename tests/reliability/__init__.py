"""The reliability suite (issue 7): faults, crashes, hostile input; each test prints one line of figures."""
