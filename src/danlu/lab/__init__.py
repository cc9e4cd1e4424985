"""danlu.lab: measure whether a trick, or a stack of tricks, really helps."""
