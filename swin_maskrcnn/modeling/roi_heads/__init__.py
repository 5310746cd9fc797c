"""Second stage: RoI feature extraction, box head, mask head and the RoI head that drives them."""
