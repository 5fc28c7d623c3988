#!/usr/bin/env python3
"""Writes support_chat.jsonl: a customer-support data set for the demo.

The product is fictional: the Lumo smart lamp sold by Aurora Home. Each
intent has one fixed answer (so a small model can visibly learn it) and
several phrasings of the question, in English and Spanish. Deterministic:
the same script always writes the same file.
"""
import json
import os
import random

SYSTEM = {
    "en": "You are Lumo Support, the assistant for the Lumo smart lamp by Aurora Home. Answer briefly.",
    "es": "Eres Lumo Soporte, el asistente de la lámpara inteligente Lumo de Aurora Home. Responde brevemente.",
}

# intent: (answer_en, answer_es, [questions_en], [questions_es])
INTENTS = {
    "reset": (
        "Hold the power button for 10 seconds until the light blinks blue.",
        "Mantén pulsado el botón de encendido 10 segundos hasta que la luz parpadee en azul.",
        ["How do I reset my Lumo?", "How can I factory reset the lamp?", "My lamp is stuck, how do I reset it?",
         "What is the reset procedure for Lumo?", "Reset Lumo to factory settings?"],
        ["¿Cómo reinicio mi Lumo?", "¿Cómo restablezco la lámpara de fábrica?", "Mi lámpara está bloqueada, ¿cómo la reinicio?",
         "¿Cuál es el procedimiento para resetear Lumo?", "¿Restablecer Lumo a valores de fábrica?"],
    ),
    "wifi": (
        "Open the Aurora app, tap Add device and choose your 2.4 GHz Wi-Fi network.",
        "Abre la app Aurora, toca Añadir dispositivo y elige tu red Wi-Fi de 2,4 GHz.",
        ["How do I connect Lumo to Wi-Fi?", "How do I pair the lamp with my network?", "Lumo won't join my Wi-Fi, what do I do?",
         "Setting up Wi-Fi on Lumo?", "How to connect the lamp to the internet?"],
        ["¿Cómo conecto Lumo al Wi-Fi?", "¿Cómo vinculo la lámpara con mi red?", "Lumo no se conecta a mi Wi-Fi, ¿qué hago?",
         "¿Configurar el Wi-Fi en Lumo?", "¿Cómo conecto la lámpara a internet?"],
    ),
    "warranty": (
        "Lumo has a 2-year warranty from the date of purchase.",
        "Lumo tiene 2 años de garantía desde la fecha de compra.",
        ["How long is the warranty?", "What warranty does Lumo have?", "Is my lamp still under warranty?",
         "Warranty period for Lumo?", "How many years of warranty do I get?"],
        ["¿Cuánto dura la garantía?", "¿Qué garantía tiene Lumo?", "¿Mi lámpara sigue en garantía?",
         "¿Periodo de garantía de Lumo?", "¿Cuántos años de garantía tengo?"],
    ),
    "return": (
        "You can return Lumo within 30 days; start the return at aurora.example/returns.",
        "Puedes devolver Lumo en 30 días; inicia la devolución en aurora.example/devoluciones.",
        ["How do I return my lamp?", "Can I send Lumo back?", "What is the return policy?",
         "I want a refund for Lumo.", "How many days do I have to return it?"],
        ["¿Cómo devuelvo mi lámpara?", "¿Puedo devolver Lumo?", "¿Cuál es la política de devoluciones?",
         "Quiero un reembolso por Lumo.", "¿Cuántos días tengo para devolverla?"],
    ),
    "colors": (
        "Lumo shows 16 million colors; pick one in the Aurora app under Color.",
        "Lumo muestra 16 millones de colores; elige uno en la app Aurora en Color.",
        ["How do I change the color?", "Can Lumo change colors?", "How many colors does the lamp have?",
         "Set the lamp to red?", "Where do I choose the light color?"],
        ["¿Cómo cambio el color?", "¿Lumo puede cambiar de color?", "¿Cuántos colores tiene la lámpara?",
         "¿Poner la lámpara en rojo?", "¿Dónde elijo el color de la luz?"],
    ),
    "schedule": (
        "In the Aurora app, open Routines and add a schedule with the on and off times.",
        "En la app Aurora, abre Rutinas y añade un horario con la hora de encendido y apagado.",
        ["How do I schedule the lamp?", "Can Lumo turn on automatically?", "Set a timer for Lumo?",
         "How do I make the lamp turn off at night?", "Create a routine for the lamp?"],
        ["¿Cómo programo la lámpara?", "¿Lumo puede encenderse sola?", "¿Poner un temporizador en Lumo?",
         "¿Cómo hago que la lámpara se apague de noche?", "¿Crear una rutina para la lámpara?"],
    ),
    "voice": (
        "Lumo works with Alexa and Google Home; link it in the Aurora app under Voice.",
        "Lumo funciona con Alexa y Google Home; vincúlala en la app Aurora en Voz.",
        ["Does Lumo work with Alexa?", "Can I control the lamp by voice?", "Does it support Google Home?",
         "Voice assistant support?", "How do I link Lumo to my speaker?"],
        ["¿Lumo funciona con Alexa?", "¿Puedo controlar la lámpara por voz?", "¿Es compatible con Google Home?",
         "¿Soporte de asistente de voz?", "¿Cómo vinculo Lumo a mi altavoz?"],
    ),
    "bulb": (
        "The LED module is built in and lasts about 25,000 hours; it is not replaceable.",
        "El módulo LED es integrado y dura unas 25.000 horas; no se puede reemplazar.",
        ["Can I replace the bulb?", "How long does the LED last?", "The light burned out, can I change it?",
         "What bulb does Lumo use?", "Is the LED replaceable?"],
        ["¿Puedo cambiar la bombilla?", "¿Cuánto dura el LED?", "Se fundió la luz, ¿puedo cambiarla?",
         "¿Qué bombilla usa Lumo?", "¿El LED es reemplazable?"],
    ),
    "firmware": (
        "Updates install automatically at night; you can also tap Update in the Aurora app.",
        "Las actualizaciones se instalan solas de noche; también puedes tocar Actualizar en la app Aurora.",
        ["How do I update the firmware?", "Is there a software update for Lumo?", "How do updates work?",
         "Update my lamp?", "Does Lumo update itself?"],
        ["¿Cómo actualizo el firmware?", "¿Hay una actualización para Lumo?", "¿Cómo funcionan las actualizaciones?",
         "¿Actualizar mi lámpara?", "¿Lumo se actualiza sola?"],
    ),
    "contact": (
        "Write to help@aurora.example or call +1 555 0100, Monday to Friday, 9 to 17.",
        "Escribe a help@aurora.example o llama al +1 555 0100, de lunes a viernes, de 9 a 17.",
        ["How do I contact support?", "What is your phone number?", "Can I talk to a person?",
         "Support email address?", "When is support open?"],
        ["¿Cómo contacto con soporte?", "¿Cuál es su teléfono?", "¿Puedo hablar con una persona?",
         "¿Correo de soporte?", "¿Cuándo abre el soporte?"],
    ),
    "price": (
        "Lumo costs 49 euros and the two-pack costs 89 euros.",
        "Lumo cuesta 49 euros y el pack de dos cuesta 89 euros.",
        ["How much does Lumo cost?", "What is the price of the lamp?", "Is there a two-pack?",
         "Lumo price?", "How expensive is the lamp?"],
        ["¿Cuánto cuesta Lumo?", "¿Cuál es el precio de la lámpara?", "¿Hay un pack de dos?",
         "¿Precio de Lumo?", "¿Es cara la lámpara?"],
    ),
    "brightness": (
        "Slide the brightness bar in the Aurora app or tap the lamp twice to dim it.",
        "Desliza la barra de brillo en la app Aurora o toca la lámpara dos veces para atenuarla.",
        ["How do I dim the lamp?", "Can I change the brightness?", "The light is too bright, what can I do?",
         "Adjust Lumo brightness?", "How do I make it brighter?"],
        ["¿Cómo atenúo la lámpara?", "¿Puedo cambiar el brillo?", "La luz es muy fuerte, ¿qué hago?",
         "¿Ajustar el brillo de Lumo?", "¿Cómo la pongo más brillante?"],
    ),
}


def main():
    rng = random.Random(7)
    rows = []
    for intent, (ans_en, ans_es, qs_en, qs_es) in sorted(INTENTS.items()):
        for lang, answer, questions in (("en", ans_en, qs_en), ("es", ans_es, qs_es)):
            for q in questions:
                for variant in range(2):
                    # The second variant greets first, as many customers do.
                    greeting = {"en": "Hi! ", "es": "¡Hola! "}[lang] if variant else ""
                    rows.append({"messages": [
                        {"role": "system", "content": SYSTEM[lang]},
                        {"role": "user", "content": greeting + q},
                        {"role": "assistant", "content": answer},
                    ]})
    rng.shuffle(rows)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support_chat.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
