# Runs first at every start. It stays free of logic: a broken boot.py cannot
# be repaired over the air, so everything starts from main.py and pb/.
