"""Pure figure functions: arrays in, plotly go.Figure out. No gradio import in this package."""
