"""Recipes: typed model, YAML loading with `extends`, validation."""

from .load import RecipeBook
from .located import LoadedRecipe
from .model import Recipe

__all__ = ["LoadedRecipe", "Recipe", "RecipeBook"]
