"""Online propensity models (river), snapshots, the learner and offline evaluation.

Arrives with the learning loop; decisions read a neutral prior until then.
"""
