"""Accounting: queries, reports, budgets and archives, served off the scheduling thread."""
