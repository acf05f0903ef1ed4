"""The data: the dataset table, class names, prepared files and the label table, the dataset, transforms, the
stratified split, single-label folders."""
