"""Compute for the views: a model and a prompt in, small arrays out. No gradio, no plotly."""
