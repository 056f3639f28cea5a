"""Recipes: typed model, YAML loading with `extends`, validation."""

from .load import LoadedRecipe, RecipeBook
from .model import Recipe

__all__ = ["LoadedRecipe", "Recipe", "RecipeBook"]
