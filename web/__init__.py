"""herdless web tier: the Flask app that answers cache reads from Redis in one round trip."""
