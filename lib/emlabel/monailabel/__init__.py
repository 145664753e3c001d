"""Adapters between MONAI Label (datastore, tasks, REST) and the EMLabel library."""
