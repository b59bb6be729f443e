"""The one runtime layer: a predictor per backend behind one interface (vr.runtime.base), chosen
by the format table (vr.formats) in vr.runtime.load.load_predictor."""
