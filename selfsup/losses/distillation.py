"""(filled in by the method that needs it)"""

__all__: list[str] = []
