"""Running a plan: the journal, the move steps, retries and the executor."""
