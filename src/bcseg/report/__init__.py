"""Figures and the self-contained HTML report. No TensorFlow here."""
