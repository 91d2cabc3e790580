"""Attribution quality: linear datamodeling score (LDS) and counterfactual removal checks."""
