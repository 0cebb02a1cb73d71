"""Records: build, validate and compare sets of runs, and render the leaderboard (python -m records --help)."""
