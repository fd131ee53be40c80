"""Step 3: merging the sub-models: the method table, mergekit configurations, inputs, routes, adapter output, card."""
