"""Training of the project's own demo VLM (see ``train_demo``)."""
