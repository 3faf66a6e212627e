"""Video re-ID datasets: official layouts, synthetic data, prepared frame stores, samplers."""
