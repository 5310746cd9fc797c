"""Looking at data and models before and after training: data inspection and the anchor fit (h16), error analysis (h17)."""
