"""Running a trained model: `predict` (top-k of images), `evaluate` (accuracy and confusion over a split) and
`explain` (what the head looks at, drawn over the original image)."""
