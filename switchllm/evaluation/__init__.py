"""Router evaluation: routing metrics (`metrics`), the runner (`runner`) and plots (`plots`)."""
