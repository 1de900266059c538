"""Wire types of the OpenAI API surface: requests validated, responses built and documented."""
