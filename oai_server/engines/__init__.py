"""Token engines behind the `engines.base.TokenEngine` seam."""
