"""The results layer between the store and the recipes: `measures` (every statistic, written once, pure: no
framework imports) and `runs` (the view a recipe reads its runs through)."""
