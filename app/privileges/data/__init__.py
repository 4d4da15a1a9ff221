"""Reference data shipped with the privilege catalogue (subsets of the national code tables, see build.py)."""
