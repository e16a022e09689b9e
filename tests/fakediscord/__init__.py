"""A fake Discord (REST + gateway) on 127.0.0.1 for testing the real discord.py client."""
