"""Reading images, masks and layouts; splits by specimen; checks; the phantom. No TensorFlow here."""
