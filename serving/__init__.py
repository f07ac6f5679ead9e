"""Online recommendation API serving the MLflow champion."""
